"""The pretraining data pipeline: UniRef50 as a TFDS dataset, Ankh's objective as seqio preprocessors, and the
trainer's resumable per-host input.

Modules (only these import TensorFlow / seqio, and only when used):
  * ``uniref50``: the TFDS builder (FASTA as manual download -> sharded TFRecords, train/validation by id hash);
  * ``span_corruption``: random crop, 1-gram span masking and the ablation knobs;
  * ``input_pipeline``: ``make_input(...)`` -> ``ResumableIterator`` (``get_state`` / ``set_state``);
  * ``epoch_dataset``: the tf.data graph of one epoch behind that iterator.

Importing this package (or ``input_pipeline``) does not import TensorFlow: the trainer can name
``make_input`` in gin without paying for TF until it builds the iterator.
"""
