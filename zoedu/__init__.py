"""zoedu: learn and explore memory-efficient and private training of language models.

Subpackages: ``zoedu.models``, ``zoedu.tasks``, ``zoedu.train`` (the one loop, ``fit``),
``zoedu.memory`` (measured and estimated footprints), ``zoedu.optim`` (MeZO, IP-SGD,
Addax), ``zoedu.mixing`` (PiKE and samplers), ``zoedu.privacy`` (DP with public data),
``zoedu.experiments`` (the runs notebooks and the CLI share) and ``zoedu.viz`` (figures
and dashboards). Import what you use; nothing heavy is imported here.
"""

__version__ = "0.1.0"
