"""LightningDataModules and tokenizers (text, and later pixels and MIDI events)."""
