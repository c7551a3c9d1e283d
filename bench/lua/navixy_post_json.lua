-- Navixy: POST /v2/user/session/push_token/bind with a JSON body; each session
-- re-binds (the new token replaces the session's previous one).
SCENARIO = { name = "navixy_post_json", keys = "session" }

function SCENARIO.prefix(k, host)
   return "POST /v2/user/session/push_token/bind HTTP/1.1\r\nHost: " .. host .. "\r\n"
      .. "Content-Type: application/json\r\n"
end

function SCENARIO.build(k, run, tid, i)
   local body = '{"hash":"' .. k.session .. '","application":"navixy_android_viewer","token":"'
      .. fcm_token(run, tid, i) .. '"}'
   return k.prefix .. "Content-Length: " .. #body .. "\r\n\r\n" .. body
end

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
