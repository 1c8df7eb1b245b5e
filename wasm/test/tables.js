// Tables shaped like the course NestJS template's UserPointTable and
// PointHistoryTable, with random latency like its `randomInt` delays.
'use strict';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const jitter = (max) => sleep(Math.floor(Math.random() * (max + 1)));

class UserPointTable {
  constructor(latencyMs = 20) { this.table = new Map(); this.latencyMs = latencyMs; }
  async selectById(id) {
    await jitter(this.latencyMs);
    return this.table.get(id) ?? { id, point: 0, updateMillis: Date.now() };
  }
  async insertOrUpdate(id, point) {
    await jitter(this.latencyMs);
    const row = { id, point, updateMillis: Date.now() };
    this.table.set(id, row);
    return row;
  }
}

// TransactionType of the template: a numeric enum.
const TransactionType = { CHARGE: 0, USE: 1 };

class PointHistoryTable {
  constructor(latencyMs = 20) { this.table = []; this.cursor = 1; this.latencyMs = latencyMs; }
  async insert(userId, amount, type, timeMillis) {
    await jitter(this.latencyMs);
    const row = { id: this.cursor++, userId, amount, type, timeMillis };
    this.table.push(row);
    return row;
  }
  async selectAllByUserId(userId) {
    await jitter(this.latencyMs);
    return this.table.filter((row) => row.userId === userId);
  }
}

module.exports = { UserPointTable, PointHistoryTable, TransactionType, sleep };
