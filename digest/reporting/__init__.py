"""Reports for editors, the publisher and advertisers: one issue's reach and clicks link by link
(`issue`), the appeal and the list over time (`trends`), each supplier's reach and clicks (`suppliers`).
Read-only; `links` maps a clicked URL to the issue's link. Figures and their sources: docs/reports.md."""
