"""computeflow's shared leaf: what every layer may import (it imports none of them)."""
