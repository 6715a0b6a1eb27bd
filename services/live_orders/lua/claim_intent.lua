-- Decide atomically whether a payment or a cancellation may go to inventory.
-- KEYS[1] order hash   <prefix>lo:{u:<tag>}:order:<order_id>
-- ARGV[1] intent: "pay" | "cancel"   ARGV[2] allowed statuses, comma separated
-- ARGV[3] payment_ref (pay) or ""    ARGV[4] amount_cents (pay) or ""
-- Returns {"claimed" | "held" | "not_allowed" | "missing", status, intent, payment_ref}
--
-- An order carries at most one intent, set here and never replaced: a payment and a
-- cancellation racing on one order cannot both be sent to inventory, and of two payments
-- only the first payment_ref is ever recorded.
local state = redis.call('HMGET', KEYS[1], 'status', 'intent', 'payment_ref')
local status = state[1]
if not status then
  return {'missing', '', '', ''}
end
local intent = state[2] or ''
local payment_ref = state[3] or ''
if intent ~= '' then
  return {'held', status, intent, payment_ref}
end
if not string.find(',' .. ARGV[2] .. ',', ',' .. status .. ',', 1, true) then
  return {'not_allowed', status, '', ''}
end
if ARGV[1] == 'pay' then
  redis.call('HSET', KEYS[1], 'intent', 'pay', 'payment_ref', ARGV[3], 'amount_cents', ARGV[4])
else
  redis.call('HSET', KEYS[1], 'intent', 'cancel')
end
return {'claimed', status, ARGV[1], ARGV[3]}
