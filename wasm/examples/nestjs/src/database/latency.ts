/**
 * The template's simulated latency: a call waits a random `0..max` ms
 * (`randomInt(max)`, as in the template), then does its work. `max` 0: no timer
 * at all, the work is done in a microtask.
 */
export function afterLatency<T>(max: number, work: () => T): Promise<T> {
  if (max <= 0) return Promise.resolve().then(work);
  return new Promise((resolve, reject) =>
    setTimeout(() => {
      try {
        resolve(work());
      } catch (error) {
        reject(error);
      }
    }, Math.floor(Math.random() * max)),
  );
}
