// Browser notifications for new approvals, questions and operator messages: opt-in, mutable.
import { $, setText } from './dom.js';

const MUTE_KEY = 'hyperhive.notify.muted';
const supported = 'Notification' in window && window.isSecureContext;

const muted = () => localStorage.getItem(MUTE_KEY) === '1';

function paint() {
  const button = $('notify');
  button.hidden = false;
  button.disabled = false;
  if (!supported) {
    setText(button, 'notifications unavailable here');
    button.disabled = true;
  } else if (Notification.permission === 'denied') {
    setText(button, 'notifications blocked');
    button.disabled = true;
  } else if (Notification.permission === 'default') {
    setText(button, '🔔 enable notifications');
  } else {
    setText(button, muted() ? '🔔 unmute' : '🔕 mute');
  }
  button.setAttribute('aria-pressed', String(supported && Notification.permission === 'granted' && !muted()));
}

export function setupNotifications() {
  $('notify').addEventListener('click', async () => {
    if (!supported) return;
    if (Notification.permission === 'default') await Notification.requestPermission();
    else if (Notification.permission === 'granted') localStorage.setItem(MUTE_KEY, muted() ? '0' : '1');
    paint();
  });
  paint();
}

export function notify(title, body, tag) {
  if (!supported || Notification.permission !== 'granted' || muted() || document.hasFocus()) return;
  const n = new Notification(title, { body: body.slice(0, 200), tag });
  n.onclick = () => { window.focus(); n.close(); };
}
