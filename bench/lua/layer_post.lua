-- Layer: POST /push_tokens with a session token; a user's devices re-register
-- (device_id from a small per-user set), every request carrying a fresh APNs token.
-- layer_flood.lua sets FLOOD and runs this file: the same requests, all on one key.
SCENARIO = FLOOD and { name = "layer_flood", keys = "flood" }
   or { name = "layer_post", keys = "device" }

function SCENARIO.prefix(k, host)
   return "POST /push_tokens HTTP/1.1\r\nHost: " .. host .. "\r\n"
      .. "Accept: application/vnd.layer+json; version=1.0\r\n"
      .. 'Authorization: Layer session-token="' .. k.session .. '"\r\n'
      .. "Content-Type: application/json\r\n"
end

function SCENARIO.build(k, run, tid, i)
   local body = '{"token":"' .. apns_token(run, tid, i) .. '","type":"apns","device_id":"'
      .. k.device .. '"}'
   return k.prefix .. "Content-Length: " .. #body .. "\r\n\r\n" .. body
end

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
