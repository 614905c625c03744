"""Pure nn.Modules and loaders. Never imports :mod:`stream`."""
