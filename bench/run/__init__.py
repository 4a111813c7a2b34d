"""The run side: config -> cells -> cell runner (shared passes, replay, timing) -> executors -> sweep
-> store."""
