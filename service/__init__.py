"""Configuration, the daemon loop, the HTTP app and the CLI. Wires everything; nothing imports it."""
