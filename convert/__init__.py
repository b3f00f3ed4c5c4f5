"""fuselite.convert: a trained run -> one checked, self-describing TFLite bundle per variant.

``variants`` (the variant table), ``numerics``, ``report`` and ``modelinfo``'s op
checks import no TensorFlow; ``tflite``, ``compress`` and ``export`` do.  Start at
:func:`fuselite.convert.export.convert_run` or ``fuselite convert --help``.
"""
