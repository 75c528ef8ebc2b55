"""Which weights a fold keeps (``trainer.select``): the registry's names and constructor under their old module,
and the built-in policies' classes, kept for old imports (the policies live in ``train/select/``, one file each,
and ``conf/select/<name>.yaml``).

``best`` picks the evaluation with the lowest validation MSE, on the very rows the CV then scores: the CV is the
minimum of a noisy curve and flatters the model by an amount only a holdout measures (``cv.holdout``). ``best_epoch``
picks among the epochs' last evaluations only (fewer chances to be lucky). ``last``, ``ema`` and ``swa`` choose
nothing by the validation rows: the final weights, their exponential moving average over the optimizer steps, or
the plain average of the weights at the last ``trainer.swa_evals`` planned evaluations. The averages are
``torch.optim.swa_utils.AveragedModel``'s.

``trainer.also_select`` lists more policies to score on the same training run: they change nothing in the
trajectory (evaluations draw no random numbers), so one run measures what each policy would have reported.
"""

from __future__ import annotations

from .select import POLICIES, chosen, make, policies, policy_class, without_evaluations
from .select.base import Averaged, Policy
from .select.best import Best, BestEpoch
from .select.ema import Ema
from .select.last import Last
from .select.swa import Swa

__all__ = ["POLICIES", "Averaged", "Best", "BestEpoch", "Ema", "Last", "Policy", "Swa", "chosen", "make", "policies",
           "policy_class", "without_evaluations"]
