"""modeconn's built-in plugins (installed as ``modeconn.plugins``; source in the top-level
``plugins/`` folder). Each module is an ordinary pluggy plugin that uses only the public
plugin API (:mod:`modeconn.plugin`); the plugin manager registers them by module name before
any third-party plugin of the ``modeconn`` entry-point group (see ``BUILTIN_PLUGINS``)."""
