import { Controller, Get } from '@nestjs/common';

/** `GET /health`: answers once the app serves requests (the tests poll it). */
@Controller('health')
export class HealthController {
  @Get()
  health(): { status: string } {
    return { status: 'ok' };
  }
}
