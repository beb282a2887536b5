"""The update store: SQLite rules, test devices and configuration, vendor cabs and their
import into the pools' file stores, and the pure decision of what a phone is served."""
