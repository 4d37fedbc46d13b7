"""Authentication (none, htpasswd basic, built-in Docker token service), access rules and CI tokens."""
