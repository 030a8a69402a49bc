"""Neural style transfer with the hsc preconditioner over the image's pixels, against L-BFGS and Adam.

Entry points: :class:`hsc.style.objective.StyleObjective` (the loss), :func:`hsc.style.run.run`
(one optimisation), :func:`hsc.style.cli.main` (``hsc style``). Imported lazily by
``hsc.__main__`` so that ``hsc info`` stays fast.
"""
