"""loradeck's web process and shared domain: settings, database, schemas, queue and live events.

Nothing under `app` imports torch, transformers, peft or bitsandbytes: the web process stays light.
"""
