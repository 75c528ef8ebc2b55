"""How the fold models' predictions become one (``cv.bagging``): the choices and the combination, for the submission,
the holdout, ``make predict`` and the exported bundles alike. Defined by the bundle's script, which runs without the
package, so that a bundle bags as the run did."""

from __future__ import annotations

from .bundle.infer import BAGGING, bag  # noqa: F401  (the package's names for them)
