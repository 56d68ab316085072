-- Free devices of a finished rollout for other rollouts.
-- KEYS[1] only routes the call to the node of the prefix's slot (Redis Cluster).
-- ARGV[1] device lock prefix, ARGV[2] rollout id, ARGV[3..] device ids
local freed = 0
for i = 3, #ARGV do
  local key = ARGV[1] .. ARGV[i] .. ':rollout'
  if redis.call('GET', key) == ARGV[2] then
    redis.call('DEL', key)
    freed = freed + 1
  end
end
return freed
