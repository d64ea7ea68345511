-- One request and one run through the plugin, sent together before either is answered:
--   nvim --headless -u NONE -i NONE --cmd "set rtp^=editors/nvim"
--     -c "luafile editors/nvim/tests/probe.lua"
-- The socket is the plugin's choice ($LLMD_SOCKET, else the default path) unless
-- $LLMD_PROBE_SOCKET names one for setup(). Asks daemon.info, runs the blueprint echo on
-- $LLMD_PROBE_PROMPT, waits for both answers (at most $LLMD_PROBE_WAIT_MS) and writes them to
-- $LLMD_TEST_OUT as one JSON object {run = {text, error}, info = {pid, error}, finished}.
-- With $LLMD_PROBE_THEN_PRIVATE naming a directory, it then makes that directory 0700 and
-- asks daemon.info once more, on the same client: {after = {pid, error}}.
local llmd = require("llmd")
local out = assert(os.getenv("LLMD_TEST_OUT"), "LLMD_TEST_OUT unset")
local socket = os.getenv("LLMD_PROBE_SOCKET")
if socket and socket ~= "" then
  llmd.setup({ socket = socket })
end

local outcome = { socket = llmd.socket() }
local left = 2
-- The run goes last: a refused request that stayed queued would be the run.
llmd.request("daemon.info", nil, function(result, err)
  outcome.info = { pid = result and result.pid, error = err }
  left = left - 1
end)
llmd.run({
  blueprint = "echo",
  prompt = os.getenv("LLMD_PROBE_PROMPT") or "",
  on_done = function(result, err)
    outcome.run = { text = result and result.text, error = err }
    left = left - 1
  end,
})
outcome.finished = vim.wait(tonumber(os.getenv("LLMD_PROBE_WAIT_MS") or "20000"), function()
  return left == 0
end, 5)
local private = os.getenv("LLMD_PROBE_THEN_PRIVATE")
if private and private ~= "" then
  assert(vim.loop.fs_chmod(private, 448)) -- 0o700
  local done = false
  llmd.request("daemon.info", nil, function(result, err)
    outcome.after = { pid = result and result.pid, error = err }
    done = true
  end)
  vim.wait(tonumber(os.getenv("LLMD_PROBE_WAIT_MS") or "20000"), function()
    return done
  end, 5)
end
local file = assert(io.open(out, "w"))
file:write(vim.json.encode(outcome))
file:close()
vim.cmd("qall!")
