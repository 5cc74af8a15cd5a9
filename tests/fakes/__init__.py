"""Test fakes: servers that stand in for remote services the tests cannot reach (the OpenAI Batch API)."""
