"""The settings: typed schemas (`schema`), composing conf/ (`compose`), a job's identity (`identity`)."""


class ConfigError(ValueError):
    """A setting that cannot work, found before any expensive step (validate.ConfigError is this class;
    it lives here, the lowest wing, so that data/ can raise it for a bad data.name)."""


class DivergedError(ConfigError):
    """Training or scoring produced NaN or inf: the run is not a result (change a setting)."""
