"""One `EnvAdapter` per environment: the only part of the pipeline that imports one."""
