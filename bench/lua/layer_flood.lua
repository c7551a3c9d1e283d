-- Layer: layer_post's requests, from every connection through ONE session, far past its
-- rate limit: nearly every answer is 429, so the run measures what a refusal costs.
FLOOD = true
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "layer_post.lua")
