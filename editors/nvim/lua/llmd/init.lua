-- llmd for Neovim: run blueprints through the llmd daemon and stream their answers.
--
-- Invariants:
-- - Never blocks the UI: every request is asynchronous, every callback runs from the main
--   loop (see llmd.client), buffers change only there.
-- - One connection per setup, opened on first use and again after the daemon restarts.
-- - A run's callbacks are called in order: on_state/on_output as notifications arrive, then
--   on_done exactly once, with (result, nil) or (nil, err) where err is the JSON-RPC error
--   object ({code, message, data}).

local client_mod = require("llmd.client")

local M = {}

local config = { socket = nil, blueprint = nil }
local conn = nil
local runs = {} -- request id -> handle, while in flight
local buffers = {} -- job id -> buffer number

M.UNREACHABLE = client_mod.UNREACHABLE

---Configure the plugin; every field is optional.
---@param opts table|nil  {socket = PATH, blueprint = NAME}
function M.setup(opts)
  opts = opts or {}
  config.socket = opts.socket
  config.blueprint = opts.blueprint
  if conn then
    conn:close()
    conn = nil
  end
end

---The socket path in use: setup's, else $LLMD_SOCKET, else the daemon's default.
function M.socket()
  return config.socket or client_mod.default_socket()
end

local function connection()
  if conn == nil then
    conn = client_mod.new(M.socket())
  end
  return conn
end

---Send any request to llmd.
---@param method string
---@param params table|nil
---@param callback fun(result: any, err: table|nil)
function M.request(method, params, callback)
  return connection():request(method, params, callback)
end

local Handle = {}
Handle.__index = Handle

---Cancel the run: `llm.cancel` once its job is known (answered -32802), else a
---`$/cancelRequest` for its request (answered -32800).
function Handle:cancel()
  if self.done then
    return
  end
  if self.job then
    M.request("llm.cancel", { job = self.job }, function() end)
  else
    self._conn:notify("$/cancelRequest", { id = self.request })
  end
end

---Run a blueprint, streaming its output.
---@param opts table  {blueprint, prompt, cwd?, model?, session?, timeout?, on_output = fn(text),
---  on_state = fn(params)?, on_done = fn(result, err)}
---@return table handle  {job (once known), request, done, cancel = fn}
function M.run(opts)
  local blueprint = opts.blueprint or config.blueprint
  local on_output = opts.on_output or function() end
  local on_state = opts.on_state or function() end
  local on_done = opts.on_done or function() end
  local c = connection()
  local handle = setmetatable({ job = nil, done = false, _conn = c }, Handle)
  local params = {
    blueprint = blueprint,
    prompt = opts.prompt,
    stream = true,
    cwd = opts.cwd,
    model = opts.model,
    session = opts.session,
    timeout = opts.timeout,
  }
  local function notified(method, p)
    if p.job and handle.job == nil then
      handle.job = p.job
    end
    if method == "llm.output" then
      if p.stream == "stdout" then
        on_output(p.text)
      end
    elseif method == "llm.state" then
      on_state(p)
    end
  end
  local function replied(result, err)
    handle.done = true
    runs[handle.request] = nil
    if result and result.job then
      handle.job = result.job
    elseif err and err.data and err.data.job then
      handle.job = handle.job or err.data.job
    end
    on_done(result, err)
  end
  if blueprint == nil then
    handle.done = true
    vim.schedule(function()
      on_done(nil, { code = -32602, message = "no blueprint given and no default set" })
    end)
    return handle
  end
  handle.request = c:request("llm.run", params, replied, notified)
  runs[handle.request] = handle
  return handle
end

---Runs of this editor in flight.
function M.running()
  local n = 0
  for _ in pairs(runs) do
    n = n + 1
  end
  return n
end

---For the statusline: "llmd: N running" while runs are in flight, else "".
function M.statusline()
  local n = M.running()
  if n == 0 then
    return ""
  end
  return "llmd: " .. n .. " running"
end

-- --- commands -------------------------------------------------------------------------

local function notify(text, level)
  vim.notify(text, level or vim.log.levels.INFO, { title = "llmd" })
end

local function describe(err)
  return ("llmd: error %s: %s"):format(tostring(err.code), tostring(err.message))
end

local function scratch(name)
  local buf = vim.api.nvim_create_buf(true, true)
  vim.api.nvim_buf_set_name(buf, name)
  vim.api.nvim_buf_set_option(buf, "buftype", "nofile")
  vim.api.nvim_buf_set_option(buf, "bufhidden", "hide")
  vim.api.nvim_buf_set_option(buf, "swapfile", false)
  return buf
end

-- Append text that need not end at a line boundary.
local function append(buf, text)
  if not vim.api.nvim_buf_is_valid(buf) or text == "" then
    return
  end
  local last = vim.api.nvim_buf_line_count(buf) - 1
  local tail = vim.api.nvim_buf_get_lines(buf, last, last + 1, false)[1] or ""
  local pieces = vim.split(tail .. text, "\n", { plain = true })
  vim.api.nvim_buf_set_option(buf, "modifiable", true)
  vim.api.nvim_buf_set_lines(buf, last, last + 1, false, pieces)
  vim.api.nvim_buf_set_option(buf, "modifiable", false)
end

local function show(buf)
  local win = vim.fn.bufwinid(buf)
  if win ~= -1 then
    return
  end
  vim.cmd("split")
  vim.api.nvim_win_set_buf(0, buf)
end

---Run a prompt and stream the answer into the scratch buffer llmd://JOB.
---@param blueprint string|nil
---@param prompt string
---@return table handle
function M.run_to_buffer(blueprint, prompt)
  local buf = nil
  local early = {}
  local handle
  local function ensure()
    if buf == nil and handle.job then
      buf = scratch("llmd://" .. handle.job)
      vim.api.nvim_buf_set_var(buf, "llmd_job", handle.job)
      vim.api.nvim_buf_set_var(buf, "llmd_state", "queued")
      buffers[handle.job] = buf
      vim.api.nvim_buf_set_option(buf, "modifiable", false)
      show(buf)
      for _, text in ipairs(early) do
        append(buf, text)
      end
      early = {}
    end
    return buf
  end
  handle = M.run({
    blueprint = blueprint,
    prompt = prompt,
    cwd = vim.fn.getcwd(),
    on_state = function(p)
      local b = ensure()
      if b then
        vim.api.nvim_buf_set_var(b, "llmd_state", p.state)
        if p.state == "retrying" and p.restart_output then
          vim.api.nvim_buf_set_option(b, "modifiable", true)
          vim.api.nvim_buf_set_lines(b, 0, -1, false, {})
          vim.api.nvim_buf_set_option(b, "modifiable", false)
        end
      end
    end,
    on_output = function(text)
      local b = ensure()
      if b then
        append(b, text)
      else
        early[#early + 1] = text
      end
    end,
    on_done = function(result, err)
      local b = ensure()
      if err then
        if b then
          vim.api.nvim_buf_set_var(b, "llmd_state", (err.data and err.data.state) or "failed")
          append(b, "\n[" .. describe(err) .. "]")
        end
        notify(describe(err), vim.log.levels.ERROR)
      elseif b then
        vim.api.nvim_buf_set_var(b, "llmd_state", result.state)
      end
    end,
  })
  M.last = handle
  return handle
end

local function with_blueprint(given, then_)
  local name = given or config.blueprint
  if name then
    return then_(name)
  end
  M.request("blueprints.list", nil, function(result, err)
    if err then
      return notify(describe(err), vim.log.levels.ERROR)
    end
    local names = {}
    for _, bp in ipairs(result.blueprints) do
      names[#names + 1] = bp.name
    end
    vim.ui.select(names, { prompt = "llmd blueprint" }, function(choice)
      if choice then
        then_(choice)
      end
    end)
  end)
end

---:Llmd run [blueprint]: the range's lines are the prompt, else ask for one.
function M.command_run(blueprint, line1, line2, has_range)
  with_blueprint(blueprint, function(name)
    if has_range then
      local lines = vim.api.nvim_buf_get_lines(0, line1 - 1, line2, false)
      M.run_to_buffer(name, table.concat(lines, "\n") .. "\n")
      return
    end
    vim.ui.input({ prompt = "llmd " .. name .. "> " }, function(prompt)
      if prompt and prompt ~= "" then
        M.run_to_buffer(name, prompt)
      end
    end)
  end)
end

local function handle_of(job)
  for _, handle in pairs(runs) do
    if handle.job == job then
      return handle
    end
  end
  return nil
end

---Cancel a job by id (any job, not only this editor's).
function M.cancel_job(job, callback)
  M.request("llm.cancel", { job = job }, function(result, err)
    if callback then
      return callback(result, err)
    end
    if err then
      notify(describe(err), vim.log.levels.ERROR)
    elseif result.cancelled then
      notify("llmd: cancelled " .. job)
    else
      notify("llmd: " .. job .. " had already finished")
    end
  end)
end

---:Llmd cancel: the current buffer's job.
function M.command_cancel()
  local ok, job = pcall(vim.api.nvim_buf_get_var, 0, "llmd_job")
  if not ok then
    return notify("llmd: this buffer shows no job", vim.log.levels.WARN)
  end
  local handle = handle_of(job)
  if handle then
    handle:cancel()
  else
    M.cancel_job(job)
  end
end

---Open a job's answer in llmd://JOB (its live buffer when it is still streaming here).
function M.open_job(job)
  local buf = buffers[job]
  if buf and vim.api.nvim_buf_is_valid(buf) then
    show(buf)
    return
  end
  M.request("jobs.get", { job = job }, function(record, err)
    if err then
      return notify(describe(err), vim.log.levels.ERROR)
    end
    local b = vim.fn.bufnr("llmd://" .. job)
    if b == -1 then
      b = scratch("llmd://" .. job)
    end
    buffers[job] = b
    vim.api.nvim_buf_set_var(b, "llmd_job", job)
    vim.api.nvim_buf_set_var(b, "llmd_state", record.state)
    local text
    if record.result then
      text = record.result.text
    elseif record.error then
      text = "[" .. describe(record.error) .. "]"
    else
      text = "[llmd: " .. job .. " is " .. record.state .. "]"
    end
    vim.api.nvim_buf_set_option(b, "modifiable", true)
    vim.api.nvim_buf_set_lines(b, 0, -1, false, vim.split(text, "\n", { plain = true }))
    vim.api.nvim_buf_set_option(b, "modifiable", false)
    show(b)
  end)
end

---:Llmd jobs: pick one of jobs.list, then open its answer or cancel it.
function M.command_jobs()
  M.request("jobs.list", { limit = 50 }, function(result, err)
    if err then
      return notify(describe(err), vim.log.levels.ERROR)
    end
    if #result.jobs == 0 then
      return notify("llmd: no jobs")
    end
    vim.ui.select(result.jobs, {
      prompt = "llmd jobs",
      format_item = function(r)
        return ("%s  %-12s %-10s %s"):format(r.job, r.blueprint, r.state, r.created_at or "")
      end,
    }, function(record)
      if not record then
        return
      end
      vim.ui.select({ "open", "cancel" }, { prompt = record.job }, function(action)
        if action == "open" then
          M.open_job(record.job)
        elseif action == "cancel" then
          M.cancel_job(record.job)
        end
      end)
    end)
  end)
end

---:Llmd status: every blueprint's health, from the daemon's cache.
function M.command_status(callback)
  M.request("health.status", nil, function(result, err)
    if err then
      return notify(describe(err), vim.log.levels.ERROR)
    end
    local names = vim.tbl_keys(result.blueprints)
    table.sort(names)
    local lines = { "llmd at " .. M.socket() }
    for _, name in ipairs(names) do
      local h = result.blueprints[name]
      local extra = h.version or h.detail or ""
      lines[#lines + 1] = ("%-16s %-12s %s"):format(name, h.state, extra)
    end
    notify(table.concat(lines, "\n"))
    if callback then
      callback(result)
    end
  end)
end

---The :Llmd command.
function M.command(opts)
  local args = opts.fargs
  local sub = args[1] or "run"
  if sub == "run" then
    M.command_run(args[2], opts.line1, opts.line2, opts.range > 0)
  elseif sub == "cancel" then
    M.command_cancel()
  elseif sub == "jobs" then
    M.command_jobs()
  elseif sub == "status" then
    M.command_status()
  else
    notify("llmd: unknown subcommand " .. sub .. " (run, cancel, jobs, status)",
      vim.log.levels.ERROR)
  end
end

return M
