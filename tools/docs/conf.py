# Sphinx configuration of the docs site (tools/docs.sh builds it; nbs/_quarto.yml stays the Quarto one).
# Sources: the notebooks nbdev processed, staged by tools/docs_build.py in .docs-cache/src/.
import os, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # tools/, for docs_build.pandoc_slug
from docs_build import pandoc_slug  # noqa: E402

project = os.environ.get('DARKNB_DOCS_TITLE', 'darknb')
html_title = project
copyright = os.environ.get('DARKNB_DOCS_AUTHOR', '')
html_show_copyright = bool(copyright)
html_baseurl = os.environ.get('DARKNB_DOCS_URL', '')
root_doc = 'index'
extensions = ['myst_nb']
exclude_patterns = ['_static', '_outside', '**.ipynb_checkpoints']

# notebooks are rendered as nbdev left them: never executed here
nb_execution_mode = 'off'
nb_output_stderr = 'show'
nb_merge_streams = True
nb_render_markdown_format = 'myst'
nb_code_prompt_show = 'Show code'
nb_code_prompt_hide = 'Hide code'

myst_enable_extensions = ['dollarmath', 'amsmath', 'attrs_inline', 'attrs_block', 'colon_fence', 'strikethrough']
myst_dmath_double_inline = True
# Quarto's (pandoc's) heading ids, so that nbdev's doc links (raw.html#read_mosaic) land
myst_heading_anchors = 6
myst_heading_slug_func = 'docs_build.pandoc_slug'

# math from the local MathJax copy in _static/mathjax (no CDN)
mathjax_path = 'mathjax/tex-chtml.js'

html_theme = 'furo'
html_static_path = [os.environ.get('DARKNB_DOCS_STATIC', '_static')]
html_css_files = ['darknb.css']
html_copy_source = False
html_show_sourcelink = False
html_show_sphinx = False
html_permalinks_icon = '#'
html_theme_options = {
    'navigation_with_keys': True,
    'top_of_page_buttons': [],
}
if os.environ.get('DARKNB_DOCS_REPO'):
    html_theme_options['footer_icons'] = [{'name': 'GitHub', 'url': os.environ['DARKNB_DOCS_REPO'],
                                           'html': 'source on GitHub', 'class': ''}]
pygments_style = 'friendly'
pygments_dark_style = 'monokai'

suppress_warnings = ['mystnb.unknown_mime_type', 'myst.header']


def setup(app):
    "Give every section the id pandoc (so Quarto) gives its heading, whatever myst-parser version emits."
    from docutils import nodes
    from sphinx.transforms import SphinxTransform

    class PandocIds(SphinxTransform):
        default_priority = 999
        def apply(self):
            used = set()
            for sec in self.document.findall(nodes.section):
                if not sec.children or not isinstance(sec[0], nodes.title): continue
                base = slug = pandoc_slug(sec[0].astext().rstrip('#'))
                k = 0
                while slug in used: k += 1; slug = f'{base}-{k}'
                used.add(slug)
                if slug not in sec['ids'] and slug not in self.document.ids:
                    sec['ids'].append(slug); self.document.ids[slug] = sec

    app.add_transform(PandocIds)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
