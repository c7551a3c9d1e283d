-- Navixy: GET /v2/user/session/push_token/bind?hash=...&application=...&token=...
-- (FCM tokens use only [A-Za-z0-9_:-], all legal in a query string unescaped).
SCENARIO = { name = "navixy_get", keys = "session" }

function SCENARIO.prefix(k, host)
   return "GET /v2/user/session/push_token/bind?hash=" .. k.session
      .. "&application=navixy_android_viewer&token="
end

local host_line

function SCENARIO.build(k, run, tid, i)
   if host_line == nil then
      host_line = " HTTP/1.1\r\nHost: " .. wrk.host .. ":" .. tostring(wrk.port or 80)
         .. "\r\n\r\n"
   end
   return k.prefix .. fcm_token(run, tid, i) .. host_line
end

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
