"""Statement analysis: decide, per tenant scope, whether SQL may reach the server.

Public API: `Analyzer` (cached), `analyze_uncached` (the pure policy function),
`Decision`, `Scope`, `SettingChange`, and `render_settings` to build the SQL that
re-applies tracked settings on another server connection.
"""

from proxy.sql.analysis import Decision, analyze_uncached
from proxy.sql.cache import Analyzer
from proxy.sql.scope import Scope, SettingChange
from proxy.sql.settings import render_settings

__all__ = ["Analyzer", "Decision", "Scope", "SettingChange", "analyze_uncached",
           "render_settings"]
