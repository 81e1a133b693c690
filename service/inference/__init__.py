"""The Open Inference Protocol (KServe V2 REST) over the registry's versions."""
