"""Other key-management products run beside Seed KMS on the same machine (optional, named runs only)."""
