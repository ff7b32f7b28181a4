"""LightningDataModules and tokenizers for the three kinds of sequence: text (``text``; bAbI
stories and questions: ``babi``), image pixels (``pixels``) and MIDI events (``midi``), with
what they share (``base``, ``tokenizer``) and the one checked download of the public data sets
(``download``)."""
