// LaTeX through the vendored KaTeX (static/vendor/katex): problems, the model's prose, answers.
// Bad LaTeX never throws: KaTeX shows it in the error colour, so a half-typed formula stays readable.

const DELIMITERS = [
  { left: "$$", right: "$$", display: true },
  { left: "\\[", right: "\\]", display: true },
  { left: "\\(", right: "\\)", display: false },
  { left: "$", right: "$", display: false },
];

/** `text` in `element` as plain text, its $…$, \(…\), $$…$$ and \[…\] typeset. */
export function renderText(element, text) {
  element.textContent = text;
  if (typeof window.renderMathInElement === "function") {
    window.renderMathInElement(element, {
      delimiters: DELIMITERS,
      throwOnError: false,
      ignoredTags: ["script", "noscript", "style", "textarea", "pre", "code", "option"],
    });
  }
}

/** The answer `latex` typeset in `element` (text where KaTeX is missing). */
export function renderAnswer(element, latex, displayMode = false) {
  if (window.katex) {
    window.katex.render(latex, element, { throwOnError: false, displayMode });
  } else {
    element.textContent = latex;
  }
}
