"""The rollout engine: wave scheduler, dispatcher, result tracker (ARCHITECTURE §7)."""
