"""The lab's operations: a whole running lab, the demo, the troubleshooting scenarios, the
pytest plugin and its harness. The only part of lab that drives phones (through the
emulator's public API)."""
