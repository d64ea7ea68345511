-- A small test runner: nvim --headless -u NONE --cmd "set rtp+=editors/nvim"
--   -c "luafile editors/nvim/tests/run.lua"
-- Runs every test of test_llmd.lua in order, writes one line per test to $LLMD_TEST_OUT
-- ("ok NAME", "FAIL NAME: why", "figure NAME VALUE"), and exits 0 only if all passed.
local here = vim.fn.fnamemodify(debug.getinfo(1, "S").source:sub(2), ":p:h")
local out = assert(io.open(assert(os.getenv("LLMD_TEST_OUT"), "LLMD_TEST_OUT unset"), "w"))

local T = {}

function T.wait(ms, cond, what)
  if not vim.wait(ms, cond, 5) then
    error("timed out after " .. ms .. " ms waiting for " .. (what or "a condition"), 2)
  end
end

function T.eq(got, want, what)
  if not vim.deep_equal(got, want) then
    error(("%s: got %s, want %s"):format(what or "value", vim.inspect(got), vim.inspect(want)), 2)
  end
end

function T.ok(cond, what)
  if not cond then
    error((what or "assertion") .. " failed", 2)
  end
end

function T.figure(name, value)
  out:write(("figure %s %s\n"):format(name, tostring(value)))
  out:flush()
end

local only = os.getenv("LLMD_TEST_ONLY")
local tests = dofile(here .. "/test_llmd.lua")(T)
local failed = 0
for _, test in ipairs(tests) do
  if only == nil or only == "" or only == test[1] then
    local ok, err = xpcall(test[2], debug.traceback)
    if ok then
      out:write("ok " .. test[1] .. "\n")
    else
      failed = failed + 1
      out:write("FAIL " .. test[1] .. ": " .. tostring(err):gsub("\n", "\n    ") .. "\n")
    end
    out:flush()
  end
end
out:close()
vim.cmd(failed == 0 and "qall!" or "cquit 1")
