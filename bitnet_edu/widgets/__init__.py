"""Interactive widgets, one class per module: each has ``.controls`` (dict of ipywidgets),
``.figure`` (a plotly figure) and ``.widget`` (the assembled box to display).

They are tested headless: set a control's ``.value`` and assert the figure data changed.
"""
from .quant_explorer import QuantizationExplorer  # noqa
from .bitlinear_stepper import BitLinearStepper  # noqa
from .energy import EnergyCalculator  # noqa
from .chat import ChatWidget  # noqa
from .lut import LookupTableStepper  # noqa
from .kernel_race import KernelRace  # noqa
