"""HTML reports filled from jinja2 templates."""
