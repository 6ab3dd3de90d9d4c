"""forktool: materialize, sync, refresh, export and check the Tarsier fork."""
