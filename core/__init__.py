"""batchbridge.core: decode, normalise and publish batch lifecycle events. Imports no cloud SDK."""
