"""The composition root: configuration, CLI, the node and reflector
processes and the lab. Imports the subsystems; nothing imports it."""
