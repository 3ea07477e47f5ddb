// The sign-in page: POST /console/login with the token, then load the console.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.querySelector("[data-test=login-form]");
  const error = document.querySelector("[data-test=login-error]");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const token = form.elements.token.value;
    try {
      const answer = await fetch("/console/login", {
        method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({token}),
      });
      if (answer.ok) {
        window.location.reload();
        return;
      }
      const body = await answer.json().catch(() => null);
      error.textContent = body && body.error ? body.error.message : `The server answered ${answer.status}.`;
    } catch (exc) {
      error.textContent = `The server cannot be reached: ${exc.message}`;
    }
  });
});
