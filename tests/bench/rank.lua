-- wrk script for POST /v1/rank: the JSON bodies come one per line from the file given after `--`,
-- and each connection's requests cycle through them.
local bodies = {}
local next_body = 0

function init(args)
  for line in io.lines(args[1]) do
    if line ~= "" then
      bodies[#bodies + 1] = line
    end
  end
  assert(#bodies > 0, "rank.lua: no request bodies in " .. args[1])
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[next_body])
end
