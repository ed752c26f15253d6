-- wrk script: replays the signed requests `payd-loadtest presign` wrote.
--
--   payd-loadtest presign --address 127.0.0.1:8080 --count 200000 --out /tmp/requests.bin
--   wrk -t2 -c64 -d10s -s loadtest/presigned.lua http://127.0.0.1:8080 -- /tmp/requests.bin 2
--
-- Arguments after "--": the file, and the wrk thread count (-t) so that each thread
-- replays its own slice and every create is sent once. A thread that runs out of requests
-- starts its slice again, so later creates are replays (200 Idempotent-Replayed).
-- The signatures expire with payd's timestamp tolerance (300 s by default).

local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
end

local requests = {}
local next_request = 1

function init(args)
  local path = args[1] or error("presigned.lua: give the file after --")
  local threads = tonumber(args[2] or "1")
  local file = assert(io.open(path, "rb"))
  local data = file:read("*a")
  file:close()
  local index = 0
  local start = 1
  while true do
    local stop = string.find(data, "\0", start, true)
    if stop == nil then
      break
    end
    if index % threads == thread_index then
      requests[#requests + 1] = string.sub(data, start, stop - 1)
    end
    index = index + 1
    start = stop + 1
  end
  if #requests == 0 then
    error("presigned.lua: no requests for this thread in " .. path)
  end
end

function request()
  local request = requests[next_request]
  next_request = next_request % #requests + 1
  return request
end
