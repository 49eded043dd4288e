"""modeconn's built-in plugins (installed as ``modeconn.plugins``; source in the top-level
``plugins/`` folder). Each module is an ordinary pluggy plugin, registered through the
``modeconn`` entry-point group in ``pyproject.toml`` exactly like a third-party plugin."""
