-- llmd's socket, spoken NDJSON (one JSON-RPC 2.0 message per line) through vim.loop.
--
-- Invariants:
-- - One pipe per client, opened on the first request and opened again on the first request
--   after it was lost (the daemon restarted); requests made while it connects are queued.
-- - Nothing runs in the loop's fast context but byte handling: every decoded message is
--   handed on through vim.schedule, in arrival order, so callbacks may touch buffers.
-- - Every request gets exactly one callback: its reply, or an error object when the
--   connection fails or is lost before the reply (code -32000, data.socket).
-- - Only a socket of the user's own uid is connected to, root's included, and the default
--   socket's directory must be the user's own and writable by no one else; a refusal is that
--   error with data.reason ("foreign" or "unsafe"), and nothing is connected or sent.
-- - Notifications that carry a `request` id go to that request's on_notify.

local uv = vim.loop
local bit = require("bit")

local M = {}

-- The code of the client-side errors: llmd not reachable, refused, or the connection lost.
M.UNREACHABLE = -32000

local Client = {}
Client.__index = Client

---The socket path the daemon uses when none is named: $XDG_RUNTIME_DIR/llmd/llmd.sock,
---else /tmp/llmd-UID/llmd.sock.
---@return string
function M.default_path()
  local runtime = os.getenv("XDG_RUNTIME_DIR")
  if runtime and runtime ~= "" then
    return runtime .. "/llmd/llmd.sock"
  end
  return "/tmp/llmd-" .. uv.getuid() .. "/llmd.sock"
end

---The socket path when setup names none: $LLMD_SOCKET, else the daemon's default.
---@return string
function M.default_socket()
  local env = os.getenv("LLMD_SOCKET")
  if env and env ~= "" then
    return env
  end
  return M.default_path()
end

-- Plain Lua, not vim.fn: a request may be made from a luv callback (the fast context).
local function absolute(path)
  if path:sub(1, 1) == "/" then
    return path
  end
  return (uv.cwd() or "") .. "/" .. path
end

local function dirname(path)
  local directory = path:match("^(.*)/[^/]*$")
  if directory == nil then
    return "."
  end
  return directory == "" and "/" or directory
end

---Why the socket at `path` must not be spoken to, or nil when it may be.
---@param path string
---@return string|nil reason  "unsafe" (the default path's directory) or "foreign" (the socket)
---@return string|nil message
function M.refusal(path)
  local me = uv.getuid()
  -- On shared ground such as /tmp another user can create llmd-UID first and listen in
  -- it, so the default path's directory must be ours alone. A path named by the user
  -- (setup's socket, $LLMD_SOCKET) is the user's own choice of place.
  if absolute(path) == absolute(M.default_path()) then
    local directory = dirname(absolute(path))
    local st = uv.fs_lstat(directory)
    if st then
      local problem
      local mode = bit.band(st.mode, 4095)
      if st.type == "link" then
        problem = ("is a symbolic link (owner uid %d)"):format(st.uid)
      elseif st.uid ~= me then
        problem = ("belongs to uid %d, not to you (uid %d)"):format(st.uid, me)
      elseif bit.band(mode, 18) ~= 0 then -- 0o022: group or others may write
        problem = ("is writable by others (mode %04o, owner uid %d)"):format(mode, st.uid)
      end
      if problem then
        return "unsafe", ("refusing to connect to %s: its directory %s %s; another user "
          .. "could be listening there"):format(path, directory, problem)
      end
    end
  end
  -- The daemon checks its peers' uid with SO_PEERCRED, and llmc checks the listener's the
  -- same way; vim.loop cannot read it. bind() makes the socket's inode the binder's, so the
  -- owner of the inode the path leads to (a symbolic link followed) stands in for the
  -- listener's uid: a socket of another uid, root's included, is someone else's listener.
  -- It is read before connecting, so it holds where no one else can replace the socket
  -- between the two: the default path's directory, checked above, is such a place.
  local st = uv.fs_stat(path)
  if st and st.uid ~= me then
    return "foreign", ("refusing to talk to %s: it belongs to uid %d, not to you (uid %d); "
      .. "llmd runs as the user it serves, so this is someone else's listener"):format(
      path, st.uid, me)
  end
  return nil
end

---A client of the socket at `path`; nothing is opened until the first request.
---@param path string
function M.new(path)
  return setmetatable({
    path = path,
    pipe = nil,
    connected = false,
    outbox = {},
    partial = {},
    next_id = 0,
    pending = {},
    generation = 0,
  }, Client)
end

local function decode(line)
  local ok, message = pcall(vim.json.decode, line, { luanil = { object = true, array = true } })
  if ok and type(message) == "table" then
    return message
  end
  return nil
end

function Client:_fail(generation, message, reason)
  for id, request in pairs(self.pending) do
    if request.generation == generation then
      self.pending[id] = nil
      request.on_reply(nil, { code = M.UNREACHABLE, message = message,
        data = { socket = self.path, reason = reason } })
    end
  end
end

function Client:_lost(message, reason)
  local pipe = self.pipe
  local generation = self.generation
  self.pipe = nil
  self.connected = false
  self.partial = {}
  self.outbox = {}
  if pipe and not pipe:is_closing() then
    pipe:close()
  end
  -- Scheduled behind the messages already read, so a reply that came before the loss
  -- still reaches its request; requests on a newer pipe are not this pipe's.
  vim.schedule(function()
    self:_fail(generation, message, reason)
  end)
end

function Client:_dispatch(message)
  if message.method ~= nil then
    local params = message.params or {}
    local request = params.request ~= nil and self.pending[params.request] or nil
    if request and request.on_notify then
      request.on_notify(message.method, params)
    end
    return
  end
  local request = self.pending[message.id]
  if request == nil then
    return
  end
  self.pending[message.id] = nil
  request.on_reply(message.result, message.error)
end

function Client:_on_read(err, data)
  if err or data == nil then
    self:_lost(err and ("connection to llmd lost: " .. err) or "connection to llmd lost")
    return
  end
  -- Only the new bytes are searched; an unfinished line's pieces wait in self.partial and
  -- are joined once, when its newline arrives: a long line costs time in its length.
  local lines = {}
  local start = 1
  while true do
    local nl = data:find("\n", start, true)
    if nl == nil then
      break
    end
    local pieces = self.partial
    if #pieces == 0 then
      lines[#lines + 1] = data:sub(start, nl - 1)
    else
      pieces[#pieces + 1] = data:sub(start, nl - 1)
      lines[#lines + 1] = table.concat(pieces)
      self.partial = {}
    end
    start = nl + 1
  end
  if start <= #data then
    local pieces = self.partial
    pieces[#pieces + 1] = data:sub(start)
  end
  if #lines == 0 then
    return
  end
  vim.schedule(function()
    for _, line in ipairs(lines) do
      local message = decode(line)
      if message then
        self:_dispatch(message)
      end
    end
  end)
end

---Open the pipe; false, with the waiting requests failed, when the socket is refused.
function Client:_open()
  local reason, refused = M.refusal(self.path)
  if reason then
    self.generation = self.generation + 1
    self:_lost(refused, reason)
    return false
  end
  local pipe = uv.new_pipe(false)
  self.pipe = pipe
  self.generation = self.generation + 1
  self.connected = false
  pipe:connect(self.path, function(err)
    if self.pipe ~= pipe then
      return
    end
    if err then
      self:_lost("llmd is not reachable at " .. self.path .. ": " .. err
        .. " (start it with `llmd serve` or `systemctl --user start llmd.socket`)")
      return
    end
    self.connected = true
    pipe:read_start(function(read_err, data)
      if self.pipe == pipe then
        self:_on_read(read_err, data)
      end
    end)
    local outbox = self.outbox
    self.outbox = {}
    for _, line in ipairs(outbox) do
      pipe:write(line)
    end
  end)
end

function Client:_send(message)
  local line = vim.json.encode(message) .. "\n"
  -- A refused request is answered (failed) and dropped: were it queued, the next pipe
  -- that opens would send it.
  if self.pipe == nil and self:_open() == false then
    return
  end
  if self.connected then
    self.pipe:write(line)
  else
    self.outbox[#self.outbox + 1] = line
  end
end

---Send a request.
---@param method string
---@param params table|nil  Omitted from the message when nil.
---@param on_reply fun(result: any, err: table|nil)  Called once, from the main loop.
---@param on_notify fun(method: string, params: table)|nil  Notifications of this request.
---@return integer id
function Client:request(method, params, on_reply, on_notify)
  self.next_id = self.next_id + 1
  local id = self.next_id
  local request = { on_reply = on_reply, on_notify = on_notify }
  self.pending[id] = request
  self:_send({ jsonrpc = "2.0", id = id, method = method, params = params })
  request.generation = self.generation
  return id
end

---Send a notification (no reply).
function Client:notify(method, params)
  self:_send({ jsonrpc = "2.0", method = method, params = params })
end

---Whether a request is still waiting for its reply.
function Client:is_pending(id)
  return self.pending[id] ~= nil
end

---Close the pipe; requests in flight get the connection-lost error.
function Client:close()
  if self.pipe then
    self:_lost("connection to llmd closed")
  end
end

return M
