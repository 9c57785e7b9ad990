from django.http import HttpRequest, HttpResponse, JsonResponse


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def user(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse({"pk": pk})


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the view failed")
