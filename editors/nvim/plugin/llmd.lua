-- :Llmd run [blueprint] | cancel | jobs | status (see :help llmd).
if vim.g.loaded_llmd then
  return
end
vim.g.loaded_llmd = true

vim.api.nvim_create_user_command("Llmd", function(opts)
  require("llmd").command(opts)
end, {
  nargs = "*",
  range = true,
  desc = "llmd: run a blueprint, cancel, list jobs, show health",
  complete = function(_, line)
    local words = vim.split(line, "%s+")
    if #words <= 2 then
      return { "run", "cancel", "jobs", "status" }
    end
    return {}
  end,
})
