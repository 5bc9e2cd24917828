"""The tenant matrix's world and rows (tests/integration/test_tenancy.py)."""
