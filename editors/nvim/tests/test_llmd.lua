-- The plugin against a real llmd with fake CLIs (blueprints: echo, lines, flood, slow, missing).
return function(T)
  local llmd = require("llmd")
  local uv = vim.loop
  local socket = assert(os.getenv("LLMD_SOCKET"))

  local function run(opts)
    local state = { outputs = {}, states = {}, done = false }
    opts.on_output = function(text)
      state.outputs[#state.outputs + 1] = text
    end
    opts.on_state = function(p)
      state.states[#state.states + 1] = p.state
    end
    opts.on_done = function(result, err)
      state.result, state.err, state.done = result, err, true
    end
    state.handle = llmd.run(opts)
    return state
  end

  local function finish(state, ms)
    T.wait(ms or 20000, function()
      return state.done
    end, "the run's answer")
    return state
  end

  local function lines(n)
    local t = {}
    for i = 0, n - 1 do
      t[#t + 1] = "line " .. i .. "\n"
    end
    return table.concat(t)
  end

  local function buffer_text(buf)
    return table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, false), "\n")
  end

  llmd.setup({ socket = socket })

  return {
    { "streaming_order_and_completeness", function()
      local s = finish(run({ blueprint = "lines", prompt = "" }))
      T.eq(s.err, nil, "error")
      T.eq(table.concat(s.outputs), lines(300), "streamed text")
      T.eq(s.result.text, lines(300), "result text")
      T.eq(s.states, { "queued", "running", "succeeded" }, "states")
      T.ok(s.handle.job == s.result.job, "handle.job is the result's job")
    end },

    { "non_ascii_text", function()
      local text = "héllo wörld ✓ 日本語 🎉 ça\n"
      local s = finish(run({ blueprint = "echo", prompt = text }))
      T.eq(table.concat(s.outputs), text, "streamed text")
      T.eq(s.result.text, text, "result text")
    end },

    { "cancel_once_the_job_is_known", function()
      local s = run({ blueprint = "slow", prompt = "" })
      T.wait(10000, function()
        return s.handle.job ~= nil and vim.tbl_contains(s.states, "running")
      end, "the job to run")
      T.eq(llmd.statusline(), "llmd: 1 running", "statusline")
      s.handle:cancel()
      finish(s)
      T.eq(s.err.code, -32802, "error code")
      T.eq(s.err.data.job, s.handle.job, "error data job")
      T.eq(llmd.statusline(), "", "statusline when idle")
    end },

    { "cancel_before_the_job_is_known", function()
      local s = run({ blueprint = "slow", prompt = "" })
      s.handle:cancel()
      finish(s)
      T.eq(s.err.code, -32800, "error code")
    end },

    { "errors", function()
      local unknown = finish(run({ blueprint = "nope", prompt = "x" }))
      T.eq(unknown.err.code, -32001, "unknown blueprint")
      local missing = finish(run({ blueprint = "missing", prompt = "x" }))
      T.eq(missing.err.code, -32002, "missing CLI")
      T.ok(missing.err.message:find("llm%-cli%-that%-is%-not%-there") ~= nil, "names the program")
      llmd.setup({ socket = socket .. ".absent" })
      local gone = finish(run({ blueprint = "echo", prompt = "x" }))
      T.eq(gone.err.code, llmd.UNREACHABLE, "unreachable")
      llmd.setup({ socket = socket })
    end },

    { "daemon_restart_between_two_runs", function()
      local first = finish(run({ blueprint = "echo", prompt = "one" }))
      T.eq(first.result.text, "one", "first answer")
      local info
      llmd.request("daemon.info", nil, function(result)
        info = result
      end)
      T.wait(10000, function()
        return info ~= nil
      end, "daemon.info")
      uv.kill(info.pid, "sigterm")
      T.wait(20000, function()
        return uv.fs_stat(socket) == nil
      end, "the old daemon to remove its socket")
      -- The new daemon accepts once a probe of our own connects (the plugin's connection
      -- is left alone: the run below is its first use after the restart).
      local accepting = false
      local probing = false
      T.wait(30000, function()
        if not probing and not accepting then
          probing = true
          local probe = uv.new_pipe(false)
          probe:connect(socket, function(err)
            accepting = err == nil
            probe:close()
            probing = false
          end)
        end
        return accepting
      end, "a new daemon")
      local second = finish(run({ blueprint = "echo", prompt = "two" }))
      T.eq(second.err, nil, "error after the restart")
      T.eq(second.result.text, "two", "second answer")
      local again
      llmd.request("daemon.info", nil, function(result)
        again = result
      end)
      T.wait(10000, function()
        return again ~= nil
      end, "daemon.info")
      T.ok(again.pid ~= info.pid, "a new daemon answered")
    end },

    { "flood_of_2000_lines_keeps_the_ui_responsive", function()
      local ticks = {}
      local timer = vim.fn.timer_start(10, function()
        ticks[#ticks + 1] = uv.hrtime()
      end, { ["repeat"] = -1 })
      local started = uv.hrtime()
      local handle = llmd.run_to_buffer("flood", "")
      T.wait(60000, function()
        return handle.done
      end, "the flood to end")
      local ended = uv.hrtime()
      vim.fn.timer_stop(timer)
      local largest, previous = 0, started
      for _, at in ipairs(ticks) do
        largest = math.max(largest, at - previous)
        previous = at
      end
      largest = math.max(largest, ended - previous) / 1e6
      T.ok(handle.job ~= nil, "a job ran")
      local buf = vim.fn.bufnr("llmd://" .. handle.job)
      T.ok(buf ~= -1, "the job's buffer exists")
      T.eq(buffer_text(buf), lines(2000), "buffer text")
      T.eq(vim.api.nvim_buf_get_var(buf, "llmd_state"), "succeeded", "b:llmd_state")
      T.figure("flood_largest_gap_ms", ("%.1f"):format(largest))
      T.figure("flood_duration_ms", ("%.1f"):format((ended - started) / 1e6))
      local bound = tonumber(os.getenv("LLMD_TEST_GAP_BOUND_MS") or "1000")
      T.ok(largest < bound, ("largest timer gap %.1f ms < %d ms"):format(largest, bound))
      vim.cmd("bwipeout! " .. buf)
    end },

    { "command_run_with_a_range", function()
      vim.cmd("enew")
      vim.api.nvim_buf_set_lines(0, 0, -1, false, { "first ✓", "second" })
      vim.cmd("1,2Llmd run echo")
      local handle = llmd.last
      T.wait(20000, function()
        return handle.done
      end, "the run")
      local buf = vim.fn.bufnr("llmd://" .. handle.job)
      T.eq(buffer_text(buf), "first ✓\nsecond\n", "buffer text")
      T.eq(vim.api.nvim_get_current_buf(), buf, "the answer's buffer is shown")
      T.eq(vim.api.nvim_buf_get_option(buf, "buftype"), "nofile", "scratch")
    end },

    { "command_run_asks_for_a_prompt", function()
      local input = vim.ui.input
      vim.ui.input = function(_, on_confirm)
        on_confirm("asked")
      end
      vim.cmd("Llmd run echo")
      vim.ui.input = input
      local handle = llmd.last
      T.wait(20000, function()
        return handle.done
      end, "the run")
      T.eq(buffer_text(vim.fn.bufnr("llmd://" .. handle.job)), "asked", "buffer text")
    end },

    { "command_cancel_and_jobs_and_status", function()
      local input = vim.ui.input
      vim.ui.input = function(_, on_confirm)
        on_confirm("wait")
      end
      vim.cmd("Llmd run slow")
      vim.ui.input = input
      local handle = llmd.last
      T.wait(10000, function()
        return handle.job ~= nil
      end, "the job id")
      local buf = vim.fn.bufnr("llmd://" .. handle.job)
      T.wait(10000, function()
        return vim.api.nvim_buf_get_var(buf, "llmd_state") == "running"
      end, "running")
      vim.api.nvim_set_current_buf(buf)
      vim.cmd("Llmd cancel")
      T.wait(20000, function()
        return handle.done
      end, "the cancelled run")
      T.eq(vim.api.nvim_buf_get_var(buf, "llmd_state"), "cancelled", "b:llmd_state")
      -- :Llmd jobs lists the newest first; open it.
      local select = vim.ui.select
      local listed
      vim.ui.select = function(items, opts, on_choice)
        if opts.prompt == "llmd jobs" then
          listed = vim.tbl_map(opts.format_item, items)
          on_choice(items[1])
        else
          on_choice("open")
        end
      end
      vim.cmd("enew")
      vim.cmd("Llmd jobs")
      T.wait(10000, function()
        return vim.api.nvim_buf_get_name(0):find("llmd://" .. handle.job, 1, true) ~= nil
      end, "the job's buffer")
      vim.ui.select = select
      T.ok(listed[1]:find(handle.job, 1, true) == 1, "newest job first")
      T.ok(listed[1]:find("cancelled", 1, true) ~= nil, "state shown")
      local notified = {}
      local notify = vim.notify
      vim.notify = function(text)
        notified[#notified + 1] = text
      end
      local done = false
      llmd.command_status(function()
        done = true
      end)
      T.wait(10000, function()
        return done
      end, "health.status")
      vim.notify = notify
      T.ok(notified[1]:find("echo", 1, true) ~= nil, "blueprints listed")
    end },
    -- Work is counted, not timed: the bytes searched for a newline. Reading a line by
    -- searching all of it again on each chunk searches ~2 GiB here.
    { "long_line_read_in_small_chunks", function()
      local client = require("llmd.client").new(socket .. ".unused")
      local text = "é" .. string.rep("a", 4 * 1024 * 1024) .. "✓"
      local wire = vim.json.encode({ jsonrpc = "2.0", id = 1, result = { text = text } }) .. "\n"
        .. vim.json.encode({ jsonrpc = "2.0", id = 2, result = { text = "b" } }) .. "\n"
      local replies = {}
      for id = 1, 2 do
        client.pending[id] = { on_reply = function(result)
          replies[#replies + 1] = { id, result }
        end }
      end
      local find = string.find
      local searched = 0
      string.find = function(s, pattern, init, plain)
        searched = searched + #s - (init or 1) + 1
        return find(s, pattern, init, plain)
      end
      local ok, err = pcall(function()
        for at = 1, #wire, 4093 do
          client:_on_read(nil, wire:sub(at, at + 4092))
        end
      end)
      string.find = find
      assert(ok, err)
      T.ok(searched <= 2 * #wire, ("searched %d bytes for %d"):format(searched, #wire))
      T.wait(10000, function()
        return #replies == 2
      end, "both replies")
      T.eq(replies[1][1], 1, "first reply")
      T.ok(replies[1][2].text == text, "the long text decoded whole")
      T.eq(replies[2], { 2, { text = "b" } }, "second reply")
      T.eq(client.partial, {}, "nothing left over")
    end },
  }
end
