-- wrk script of the check benchmark (bench/phones.py, bench/loadgen.py): every request is
-- another phone's update check.
--
-- Arguments after "--": a file of check bodies, one per line, and the number of the phone
-- to start with. Each body is made into a whole request once, at start-up, so that the
-- measured run only hands out prepared strings, round robin, as a fleet's phones come
-- round one after another; the next run carries on where the last one stopped. No response() is
-- defined: with one, wrk would hand every answer to Lua, and the client would cost more
-- than some of the servers it measures. The answers are judged from the lab's audit log.

local requests = {}
local next_index = 0

function init(args)
   local headers = { ["Content-Type"] = "text/xml" }
   for body in io.lines(args[1]) do
      if body ~= "" then
         requests[#requests + 1] = wrk.format("POST", nil, headers, body)
      end
   end
   if #requests == 0 then
      error("no check bodies in " .. tostring(args[1]))
   end
   next_index = (tonumber(args[2]) or 0) % #requests
end

function request()
   next_index = next_index % #requests + 1
   return requests[next_index]
end
