-- wrk script: sends DEPTH requests for the URL's path in one write (HTTP/1.1 pipelining).
-- Usage: wrk -s loadtest/pipeline.lua http://127.0.0.1:8080/healthz -- 16
-- wrk counts each response, so req/s is requests answered, not writes.

local depth = 16
local batch

init = function(args)
  if args[1] ~= nil then
    depth = tonumber(args[1])
  end
  local requests = {}
  for index = 1, depth do
    requests[index] = wrk.format(nil, nil)
  end
  batch = table.concat(requests)
end

request = function()
  return batch
end
